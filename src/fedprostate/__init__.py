"""fedprostate: federated fine-tuning of foundation models for csPCa detection from bpMRI."""

__version__ = "0.1.0"
