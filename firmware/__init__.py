"""Prebuilt guest images, built from guest_kernel/ (`make -C guest_kernel`)."""
