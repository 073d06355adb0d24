"""Training recipes, one file per method: ``Config`` + ``main(cfg)`` each, built on ``base.Recipe``
(SFT now; DPO and RL join as ``dpo.py`` and ``rl.py``)."""
