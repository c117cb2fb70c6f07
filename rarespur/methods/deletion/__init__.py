"""Making a trained model forget its poisoned examples (docs/science.md#deletion): retraining and group influence."""
