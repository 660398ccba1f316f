"""nanogpt_core: the shared package of the GPT-2 speedrun course. Every technique lives here once."""

from .config import STAGES, SCALES, Config, ConfigError, ModelConfig, TrainConfig, default_scale, stage_config

__all__ = ["STAGES", "SCALES", "Config", "ConfigError", "ModelConfig", "TrainConfig", "default_scale", "stage_config"]
__version__ = "0.1.0"
