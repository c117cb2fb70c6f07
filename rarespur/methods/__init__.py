"""The science on models and tensors: regularizers, debiasing, deletion, detection, membership inference, sensitivity."""
