"""The optional faiss package (``knn_backend`` / ``kmeans_backend: faiss``; ``pip install faiss-cpu``)."""
from recbole_mm.errors import ConfigError


def import_faiss(what):
    """The faiss module, or a ConfigError naming the config key ``what`` and how to install it."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(f"{what}: backend 'faiss' needs the faiss-cpu package. Fix: pip install faiss-cpu "
                          "(or the recbole_mm[faiss] extra), or use backend 'torch'.") from None
    return faiss
