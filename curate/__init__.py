"""curate: curate image-text pretraining data and score every data choice end to end."""

import os

# img2dataset imports albumentations, which otherwise checks the network for updates on import
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
