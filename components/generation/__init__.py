"""Multi-part generation models (vision-language): parts through every stage, served as one generator."""
