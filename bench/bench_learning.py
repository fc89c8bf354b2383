"""Entry for `python -m bench`: the learning-core benchmark lives in bench/learning_bench.py."""

from bench.learning_bench import main as run

__all__ = ["run"]
