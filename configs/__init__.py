"""Experiment configs: one module per experiment, each with `get_config(arg)`.

`dpjax train --config configs/NAME.py[:key=value,...]` loads `configs.NAME`
(`dpjax.config.load_config`); shared pieces are in `configs.common`, imported
the ordinary way (`from configs import common`).
"""
