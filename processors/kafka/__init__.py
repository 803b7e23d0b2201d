"""Thin typed wrappers over ``confluent_kafka`` with the package's error mapping."""
