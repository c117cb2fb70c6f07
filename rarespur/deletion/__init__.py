"""Making a trained model forget its poisoned examples (SPEC 1.9): retraining and group influence."""
