"""Fine-tuning: a thin Lightning shell around the denoiser, objective and data (the only place lightning lives)."""
