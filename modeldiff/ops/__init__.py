"""Operations: the team stack (PostgreSQL, mlflow server, screening service) without Docker."""
