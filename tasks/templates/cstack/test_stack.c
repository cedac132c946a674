#include <assert.h>
#include <stdio.h>
#include "stack.h"

int main(void) {
    struct stack s = {{0}, 0};
    push(&s, 1);
    push(&s, 3);
    assert(pop(&s) == 3);
    assert(pop(&s) == 1);
    assert(s.size == 0);
    printf("all stack tests passed\n");
    return 0;
}
