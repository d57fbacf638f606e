"""pyserini_ssm: BM25 through Pyserini, reranked by Mamba and transformer cross-encoders.

Importing the package is cheap: it pulls in neither torch nor pyserini. `Reranker` is loaded on first use.
"""

__version__ = "0.1.0"

__all__ = ["Reranker", "UserError", "__version__"]


def __getattr__(name):
    if name == "Reranker":
        from pyserini_ssm.models.reranker import Reranker

        return Reranker
    if name == "UserError":
        from pyserini_ssm.errors import UserError

        return UserError
    raise AttributeError(f"module 'pyserini_ssm' has no attribute {name!r}")
