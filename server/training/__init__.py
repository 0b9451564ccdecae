"""Every trainer the cloud runs: the SecDOOD models and the training hub's methods.

``catalog.py`` names each method and points at its trainer module here.
"""
