#include <string.h>

int name_length(const char *name) {
    return (int)strlen(name);
}
