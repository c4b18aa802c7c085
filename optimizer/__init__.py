"""costopt: measure quality and speed of compressed open models, and what they cost to serve."""

__version__ = "0.1.0"


def load_deployment(path, device=None):  # noqa: ANN001, ANN201 - re-exported; the real signature lives in deploy.py
    """A deployment ready to call, from `costopt deploy`'s folder or a deploy.yaml; see optimizer.deploy."""
    from optimizer.deploy import load_deployment as _load

    return _load(path, device)
