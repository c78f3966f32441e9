/* Creates and joins 600 short threads one after another (slots must be recycled). */
#include <pthread.h>
#include <stdio.h>

static void *work(void *arg) { return (void *)((long)arg * 2); }

int main(void) {
    long sum = 0;
    for (long i = 0; i < 600; i++) {
        pthread_t t;
        void *r;
        if (pthread_create(&t, NULL, work, (void *)i) != 0) { printf("create failed at %ld\n", i); return 1; }
        pthread_join(t, &r);
        sum += (long)r;
    }
    printf("sum=%ld\n", sum);
    return 0;
}
