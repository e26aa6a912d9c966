"""nlprnn: recurrent models for NLP with Transformer baselines, one Accelerate loop, reproducible results."""

__version__ = "0.1.0"

from nlprnn.errors import NlprnnError  # noqa: E402

__all__ = ["NlprnnError", "__version__"]
