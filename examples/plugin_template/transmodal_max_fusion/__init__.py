"""Example transmodal plugin: an element-wise maximum fusion."""
