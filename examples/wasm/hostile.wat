;; hostile: a module that misbehaves on purpose, to show (and test) the wasm adapter's sandbox.
;;
;;   python -m corral.adapters.wasm --module hostile=examples/wasm/hostile.wat \
;;       --sandbox 'hostile={"timeout_ms": 100, "memory_mb": 4, "max_stack_bytes": 65536}'
;;
;; Exports:
;;
;;   spin()                        loops forever: stopped at the CPU budget, the reply is TIMEOUT
;;   spin_on(ptr: i32, len: i32)   the same with arrays allocated: they are freed all the same
;;   bomb() -> i32                 grows memory a page at a time until refused, then traps the way
;;                                 a Rust or C program aborts when out of memory
;;   recurse(depth: i32) -> i32    recursion without end: overflows the stack limit
;;   crash(ptr: i32, len: i32) -> i32   reads the array, then traps (unreachable)
;;   divide(a: i32, b: i32) -> i32      a / b; traps on b = 0
;;   pages() -> i32                     the size of its memory, in 64 KiB pages
;;   malloc(size: i32) -> ptr: i32      free(ptr: i32)      (Emscripten's allocator names)
;;   live_allocations() -> i32
;;
;; The allocator is the first-fit free list of physics.wat under Emscripten's names.
(module
  (memory (export "memory") 1)

  (global $heap_base i32 (i32.const 1024))
  (global $heap_top (mut i32) (i32.const 1024))
  (global $free_list (mut i32) (i32.const 0))
  (global $live (mut i32) (i32.const 0))

  (func (export "spin")
    (loop $forever (br $forever)))

  (func (export "spin_on") (param $ptr i32) (param $len i32)
    (loop $forever (br $forever)))

  (func (export "bomb") (result i32)
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable)

  (func $recurse (export "recurse") (param $depth i32) (result i32)
    (i32.add (call $recurse (i32.add (local.get $depth) (i32.const 1))) (i32.const 1)))

  (func (export "crash") (param $ptr i32) (param $len i32) (result i32)
    (drop (i32.load8_u (local.get $ptr)))
    unreachable)

  (func (export "divide") (param $a i32) (param $b i32) (result i32)
    (i32.div_s (local.get $a) (local.get $b)))

  (func (export "pages") (result i32)
    (memory.size))

  ;; --- allocator ---------------------------------------------------------------------------
  (func $alloc (export "malloc") (param $size i32) (result i32)
    (local $need i32) (local $prev i32) (local $block i32) (local $end i32) (local $have i32)
    (if (i32.gt_u (local.get $size) (i32.const 0x7fff0000)) (then (return (i32.const 0))))
    (local.set $need (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8)))
    (if (i32.eqz (local.get $need)) (then (local.set $need (i32.const 8))))
    ;; first fit on the free list
    (local.set $block (global.get $free_list))
    (block $none
      (loop $scan
        (br_if $none (i32.eqz (local.get $block)))
        (if (i32.ge_u (i32.load (local.get $block)) (local.get $need))
          (then
            (if (local.get $prev)
              (then (i32.store offset=4 (local.get $prev) (i32.load offset=4 (local.get $block))))
              (else (global.set $free_list (i32.load offset=4 (local.get $block)))))
            (return (call $claim (local.get $block)))))
        (local.set $prev (local.get $block))
        (local.set $block (i32.load offset=4 (local.get $block)))
        (br $scan)))
    ;; a new block from the top of the heap, growing memory if it does not fit
    (local.set $block (global.get $heap_top))
    (local.set $end (i32.add (local.get $block) (i32.add (local.get $need) (i32.const 8))))
    (local.set $have (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 0xffff))
                           (i32.const 16)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (i32.store (local.get $block) (local.get $need))
    (global.set $heap_top (local.get $end))
    (call $claim (local.get $block)))

  (func $claim (param $block i32) (result i32)
    (i32.store (local.get $block) (i32.or (i32.load (local.get $block)) (i32.const 1)))
    (global.set $live (i32.add (global.get $live) (i32.const 1)))
    (i32.add (local.get $block) (i32.const 8)))

  (func $dealloc (export "free") (param $ptr i32)
    (local $block i32)
    (if (i32.eqz (local.get $ptr)) (then (return)))
    (local.set $block (i32.sub (local.get $ptr) (i32.const 8)))
    (if (i32.or
          (i32.or (i32.lt_u (local.get $block) (global.get $heap_base))
                  (i32.ge_u (local.get $ptr) (global.get $heap_top)))
          (i32.and (local.get $ptr) (i32.const 7)))
      (then unreachable)) ;; not a pointer malloc handed out
    (if (i32.eqz (i32.and (i32.load (local.get $block)) (i32.const 1)))
      (then unreachable)) ;; already free
    (i32.store (local.get $block) (i32.and (i32.load (local.get $block)) (i32.const -2)))
    (i32.store offset=4 (local.get $block) (global.get $free_list))
    (global.set $free_list (local.get $block))
    (global.set $live (i32.sub (global.get $live) (i32.const 1))))

  (func (export "live_allocations") (result i32)
    (global.get $live))
)
