"""Training recipes, one file per method: ``Config`` + ``main(cfg)`` each, built on ``base.Recipe``:
``sft.py``, ``dpo.py``, ``rl.py`` (with ``reference.py``, the frozen reference of DPO and RL)."""
