"""The process fleet of a study: the parent (`runner`), its workers (`worker`), the
queue of trials and their heartbeats (`queue`), the storage connection and its locks
(`connection`), opening the Optuna study (`storage`) and the private Optuna names the
queue needs (`optuna_private`). What one trial computes lives one level up."""
