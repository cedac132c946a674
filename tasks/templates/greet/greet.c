#include <stdio.h>

int name_length(const char *name);

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "world";
    int n = name_length(name);
    printf("hello, %s (%d letters)\n", name, n);
    return 0;
}
