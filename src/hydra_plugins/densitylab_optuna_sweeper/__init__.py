"""A Hydra sweeper on current Optuna (ask-and-tell): ``hydra/sweeper=densitylab_optuna``.

Why not ``hydra-optuna-sweeper``: its newest release (1.3.0) requires ``optuna<3.0`` (Optuna 2.10,
2021), so it cannot be installed beside current Optuna (5.x). This plugin keeps its configuration
surface (``direction``, ``n_trials``, ``n_jobs``, ``study_name``, ``storage``, ``sampler`` as a
``_target_`` node, and ``params`` in Hydra's sweep syntax: ``interval(a,b)``,
``tag(log, interval(a,b))``, ``range(a,b,step=s)``, ``choice(...)``), so configs written for it
carry over by changing the sweeper name.
"""
