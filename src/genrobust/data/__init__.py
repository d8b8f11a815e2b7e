"""The prepare_data stage: every dataset source becomes the same uint8 NHWC 32x32x3 contract."""
