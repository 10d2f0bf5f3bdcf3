"""The copy-detection descriptor trainer (`curate train copydetect`)."""
