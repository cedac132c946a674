struct stack { int items[16]; int size; };
void push(struct stack *s, int v);
int pop(struct stack *s);
