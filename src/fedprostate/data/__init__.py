"""MRI data: synthetic federation, real-format readers, preprocessing, crops and caches."""
