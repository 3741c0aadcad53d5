"""GPU hygiene, checked without a GPU: the process-wide settings a run makes for its
device (cuDNN autotuning, TF32, the current device), a study's parent that never creates
a CUDA context (--devices auto, --pack auto), and evaluation batches sized to the device
without changing the figures."""

import math
import stat

import pytest
import torch

import studies.cli as study_cli
from began.config import ConfigError, TrainConfig
from began.metrics import evaluate, parse_metrics
from began.metrics.batching import CPU_BATCH, MAX_GPU_BATCH, MIN_GPU_BATCH, eval_batch_size
from began.training.device import configure_device
from studies import gamma_sweep
from studies.packing import FALLBACK_PACK, UNNAMED_GPU, device_label
from tests.test_metrics import tiny_inputs

GPU_NAME = "NVIDIA H100 80GB HBM3"


def test_tf32_is_on_or_off_and_off_by_default():
    assert TrainConfig().tf32 == "off"
    assert TrainConfig(tf32="on").tf32 == "on"
    with pytest.raises(ConfigError, match="^tf32: must be on or off, got 'true'$"):
        TrainConfig(tf32="true")


@pytest.fixture
def cuda_settings():
    """The process-wide flags a test may change, put back afterwards."""
    flags = (
        (torch.backends.cudnn, "benchmark"),
        (torch.backends.cudnn, "allow_tf32"),
    )
    flags += ((torch.backends.cuda.matmul, "allow_tf32"),)
    saved = [(owner, name, getattr(owner, name)) for owner, name in flags]
    yield
    for owner, name, value in saved:
        setattr(owner, name, value)


@pytest.mark.parametrize("tf32", ["on", "off"])
def test_a_run_on_a_gpu_autotunes_cudnn_and_sets_tf32_both_ways(monkeypatch, cuda_settings, tf32):
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    torch.backends.cudnn.benchmark = False
    configure_device(TrainConfig(tf32=tf32), torch.device("cuda:1"))
    assert chosen == [torch.device("cuda:1")]
    assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cuda.matmul.allow_tf32 is (tf32 == "on")
    assert torch.backends.cudnn.allow_tf32 is (tf32 == "on")


def test_a_run_on_a_cpu_changes_no_setting(monkeypatch, cuda_settings):
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("set_device"))
    torch.backends.cudnn.benchmark = False
    configure_device(TrainConfig(tf32="on"), torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """An nvidia-smi on PATH that names GPU N "<GPU_NAME> #N" (N as passed to -i)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(f'#!/bin/sh\n[ "$4" = 9 ] && exit 6\necho "{GPU_NAME} #$4"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return folder


@pytest.fixture
def two_gpus_that_must_not_be_touched(monkeypatch):
    """torch sees two GPUs (as NVML would tell it) but fails on anything that creates a
    CUDA context, as a study's parent must never do."""

    def no_context(*args, **kwargs):
        raise AssertionError("the study's parent process initialised CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name in ("_lazy_init", "init", "get_device_name", "get_device_properties", "set_device"):
        monkeypatch.setattr(torch.cuda, name, no_context)


def test_a_study_parent_plans_gpus_and_pack_auto_without_cuda(
    tmp_path, monkeypatch, capsys, fake_nvidia_smi, two_gpus_that_must_not_be_touched
):
    monkeypatch.chdir(tmp_path)
    planned = []
    monkeypatch.setattr(study_cli, "run_study", lambda *args: planned.append(args) or 0)
    assert gamma_sweep.main(["--pack", "auto", "--steps", "4"]) == 0
    [(spec, slots, _quiet)] = planned
    assert [slot.device for slot in slots] == ["cuda:0", "cuda:1"]
    assert spec.pack == FALLBACK_PACK  # no GPU rows in the table yet
    assert f"--pack auto: {FALLBACK_PACK} ({GPU_NAME} #0 is not in" in capsys.readouterr().out
    assert not torch.cuda.is_initialized()


def test_a_gpu_is_named_by_its_driver_id_through_cuda_visible_devices(monkeypatch, fake_nvidia_smi):
    assert device_label("cpu") == "cpu"
    assert device_label("cuda") == f"{GPU_NAME} #0"
    assert device_label("cuda:1") == f"{GPU_NAME} #1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-8f2a")
    assert device_label("cuda:0") == f"{GPU_NAME} #3"
    assert device_label("cuda:1") == f"{GPU_NAME} #GPU-8f2a"
    assert device_label("cuda:2") == UNNAMED_GPU  # not visible
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "9")  # nvidia-smi fails on it
    assert device_label("cuda:0") == UNNAMED_GPU
    monkeypatch.setenv("PATH", "")  # no driver tools at all
    assert device_label("cuda:0") == UNNAMED_GPU


def test_evaluation_batches_are_sized_to_the_device(monkeypatch):
    assert eval_batch_size("cpu") == CPU_BATCH
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 1 * gib)
    for free, expected in ((80 * gib, MAX_GPU_BATCH), (6 * gib, 64), (0, MIN_GPU_BATCH)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, f=free: (f, 80 * gib))
        # a quarter of (free + 2 GiB the allocator holds unused), at 32 MiB an image
        assert eval_batch_size("cuda:0") == expected


def test_the_batch_size_changes_no_figure(tmp_path, tiny_network):
    """Samples, features, SSIM pairs and reconstructions in batches of 5 or of 16: the
    same figures up to float rounding (the z stream does not depend on the chunks)."""
    requests = parse_metrics("fid_12,kid_12,diversity_12,recon,sharpness_12")
    values = {}
    for batch in (5, 16):
        inputs, _ = tiny_inputs(tmp_path / str(batch), str(tiny_network))
        inputs.batch_size = batch
        values[batch] = evaluate(requests, inputs)
    assert values[5].keys() == values[16].keys()
    for name, value in values[16].items():
        assert math.isclose(values[5][name], value, rel_tol=1e-4, abs_tol=1e-6), name
