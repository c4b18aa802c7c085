"""costopt: measure quality and speed of compressed open models, and what they cost to serve."""

__version__ = "0.1.0"


def load_deployment(path, device=None):  # noqa: ANN001, ANN201 - re-exported; the real signature lives in deploy.py
    """A deployment ready to call, from `costopt deploy`'s folder or a deploy.yaml; see optimizer.deploy."""
    from optimizer.deploy import load_deployment as _load

    return _load(path, device)


def run(model, recipe, **kwargs):  # noqa: ANN001, ANN003, ANN201 - re-exported; see optimizer.api.run
    """Measure a model under a recipe (path or dict), as `costopt run`; see optimizer.api."""
    from optimizer.api import run as _run

    return _run(model, recipe, **kwargs)


def search(model, recipe, **kwargs):  # noqa: ANN001, ANN003, ANN201 - re-exported; see optimizer.api.search
    """Search a recipe's space for a model, confirm and write deploy.yaml, as `costopt search`; see optimizer.api."""
    from optimizer.api import search as _search

    return _search(model, recipe, **kwargs)
