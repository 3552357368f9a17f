"""Training: forward step and loss, optimizer and schedule, metrics, the loop."""
