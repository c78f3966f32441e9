/* Executes one instruction a Linux process may not (argv[1]) and prints "survived" if it
 * was not stopped. "cpl" prints the privilege level of CS and SS instead; "gdt-write"
 * writes into the GDT (its address from sgdt). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#ifdef __x86_64__
#define AX "rax"
typedef uint64_t word;
#else
#define AX "eax"
typedef uint32_t word;
#endif

struct __attribute__((packed)) dtr { uint16_t limit; word base; };

int main(int argc, char **argv) {
    const char *op = argc > 1 ? argv[1] : "";
    static struct dtr table;
    static char scratch[64];
    word value = 0;
    if (strcmp(op, "cpl") == 0) {
        uint16_t cs, ss;
        __asm__ volatile("mov %%cs, %0; mov %%ss, %1" : "=r"(cs), "=r"(ss));
        printf("cs=%d ss=%d\n", cs & 3, ss & 3);
        return 0;
    }
    if (strcmp(op, "gdt-write") == 0) {
        __asm__ volatile("sgdt %0" : "=m"(table));
        *(volatile uint32_t *)(uintptr_t)(table.base + 0x40) = 0xffffffffu;
    }
    else if (strcmp(op, "cli") == 0) __asm__ volatile("cli");
    else if (strcmp(op, "sti") == 0) __asm__ volatile("sti");
    else if (strcmp(op, "hlt") == 0) __asm__ volatile("hlt");
    else if (strcmp(op, "in") == 0) __asm__ volatile("inb $0x60, %%al" ::: "eax");
    else if (strcmp(op, "out") == 0) __asm__ volatile("outb %%al, $0x80" ::: );
    else if (strcmp(op, "insb") == 0)
        __asm__ volatile("mov $0x60, %%dx; insb" :: "D"(scratch) : "edx", "memory");
    else if (strcmp(op, "rdmsr") == 0)
        __asm__ volatile("rdmsr" :: "c"(0x10) : "eax", "edx");
    else if (strcmp(op, "wrmsr") == 0)
        __asm__ volatile("wrmsr" :: "c"(0x10), "a"(0), "d"(0));
    else if (strcmp(op, "lgdt") == 0) __asm__ volatile("lgdt %0" :: "m"(table));
    else if (strcmp(op, "lidt") == 0) __asm__ volatile("lidt %0" :: "m"(table));
    else if (strcmp(op, "rdcr0") == 0) __asm__ volatile("mov %%cr0, %0" : "=r"(value));
    else if (strcmp(op, "wrcr3") == 0) __asm__ volatile("mov %0, %%cr3" :: "r"(value));
    else if (strcmp(op, "rdcr4") == 0) __asm__ volatile("mov %%cr4, %0" : "=r"(value));
    else if (strcmp(op, "invlpg") == 0) __asm__ volatile("invlpg %0" :: "m"(scratch[0]));
    else if (strcmp(op, "wbinvd") == 0) __asm__ volatile("wbinvd");
    else if (strcmp(op, "clts") == 0) __asm__ volatile("clts");
    else if (strcmp(op, "rddr7") == 0) __asm__ volatile("mov %%dr7, %0" : "=r"(value));
#ifdef __x86_64__
    else if (strcmp(op, "swapgs") == 0) __asm__ volatile("swapgs");
#endif
    else if (strcmp(op, "none") != 0) { printf("unknown op %s\n", op); return 2; }
    printf("survived %s %lu\n", op, (unsigned long)value);
    return 0;
}
