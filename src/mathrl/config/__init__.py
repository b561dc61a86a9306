"""The typed config: defaults < config file < MATHRL_CONFIG < --set a.b=value.

sections.py: the sections' dataclasses, each field documented once.
schema.py: the root Config (its __post_init__ runs the checks) and field_docs.
load.py: reading TOML/YAML files and --set, coercion to field types, load_config.
validate.py: range and cross-field checks; choices, read from the registries.
write.py: TOML for run directories (tomli-w) and config_hash.
"""

from mathrl.config.load import (
    ENV_CONFIG,
    build,
    iter_keys,
    load_config,
    parse_set,
    read_config_file,
    type_name,
)
from mathrl.config.schema import Config, field_docs
from mathrl.config.sections import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    ExpertIterConfig,
    LogConfig,
    LoraConfig,
    ModelConfig,
    RolloutConfig,
    ScratchConfig,
    SFTConfig,
    TaskConfig,
    TrainConfig,
    WarmupConfig,
)
from mathrl.config.validate import (
    FIXED_CHOICES,
    REGISTRY_CHOICES,
    choices,
    get_value,
)
from mathrl.config.write import config_hash, config_table, dumps_toml
from mathrl.errors import ConfigError

__all__ = [
    "ENV_CONFIG",
    "FIXED_CHOICES",
    "REGISTRY_CHOICES",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExpertIterConfig",
    "LogConfig",
    "LoraConfig",
    "ModelConfig",
    "RolloutConfig",
    "SFTConfig",
    "ScratchConfig",
    "TaskConfig",
    "TrainConfig",
    "WarmupConfig",
    "build",
    "choices",
    "config_hash",
    "config_table",
    "dumps_toml",
    "field_docs",
    "get_value",
    "iter_keys",
    "load_config",
    "parse_set",
    "read_config_file",
    "type_name",
]
