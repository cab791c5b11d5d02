"""Model: components (tiny, SD 1.x), the LightningModule, export."""
