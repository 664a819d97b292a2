"""Fine-tuning: jobs (rows with a state machine and events), the workers that run them, the local trainer."""
