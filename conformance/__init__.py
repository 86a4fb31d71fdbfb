"""Conformance checks: the product run inside environments holding exactly the deployed images' packages."""
