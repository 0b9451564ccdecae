"""Model definitions shared by the cloud (training) and the device (inference)."""
