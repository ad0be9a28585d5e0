"""Services: what blueprints call. They use recommender/ (bundles) and storage/ (database)."""
