"""esort_jax's Hydra plugins (found by Hydra's plugin scan of the `hydra_plugins` namespace):
`hydra/sweeper=optuna_resumable`, hydra-optuna-sweeper's Optuna search made resumable."""
