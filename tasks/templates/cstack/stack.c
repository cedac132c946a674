#include "stack.h"

void push(struct stack *s, int v) {
    s->items[s->size++] = v;
}

int pop(struct stack *s) {
    return s->items[--s->size];
}
