#ifndef VIKINGFS_CARGON2_SHIM_H
#define VIKINGFS_CARGON2_SHIM_H
#include <argon2.h>
#endif
