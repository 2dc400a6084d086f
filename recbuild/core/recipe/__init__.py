"""Reading a recipe: YAML with locations, extends and --set, ${...}, the schemas, matrix variants, and
the graph of artifacts and sources it declares. Owns no state on disk but the parse cache."""
