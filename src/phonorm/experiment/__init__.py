"""`phonorm run` and `phonorm demo`: the experiment file (`config`), the stage cache (`cache`), the
stages of an experiment (`plan`), running them (`run`) and the context the report gets (`context`)."""

from phonorm.experiment.config import Experiment
from phonorm.experiment.load import load_experiment
from phonorm.experiment.run import demo_config_text, run_demo, run_experiment

__all__ = ["Experiment", "demo_config_text", "load_experiment", "run_demo", "run_experiment"]
