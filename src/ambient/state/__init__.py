"""state package: the node proxy's model of the mesh (`model`), its indexed single-writer stores
(`store`) and their JSON dump for /config_dump (`dump`)."""
