"""moecl: continual and multi-task learning on frozen pretrained models with growing experts."""
import warnings

# Avalanche imports qpsolvers (for GEM), which warns at import when no QP solver is
# installed; importing it here first, silenced, keeps that noise off every command.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        import qpsolvers.solvers  # noqa: F401
    except ImportError:
        pass

__version__ = "0.1.0"
