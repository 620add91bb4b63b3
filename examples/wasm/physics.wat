;; physics: a corral module written in WebAssembly text.
;;
;;   python -m corral.adapters.wasm --module physics=examples/wasm/physics.wat
;;   nats req corral.mod.physics.compute '{"function": "step", "args": [1.0, 0.1]}'
;;
;; Exports (the array ABI is documented in services/corral/adapters/wasm/__init__.py):
;;
;;   step(x: f64, dt: f64) -> f64
;;       One explicit Euler step of exponential decay, dx/dt = -x: returns x - x * dt.
;;   fall(x: f64, v: f64, dt: f64) -> (f64, f64)
;;       One semi-implicit Euler step of a body falling under gravity (g = 9.81 m/s^2), the
;;       update examples/demo.py runs in ALGOL: v' = v - 9.81 * dt, then x' = x + v' * dt.
;;       Returns (x', v').
;;   integrate(ptr: i32, len: i32) -> f64
;;       In place over the f64 samples a[0..len) taken at unit spacing: replaces them by their
;;       running trapezoid integral, out[0] = 0 and out[i] = out[i-1] + (a[i-1] + a[i]) / 2,
;;       and returns out[len-1], the integral over the whole range (0 when len is 0).
;;       [1, 2, 3] becomes [0, 1.5, 4] and 4 is returned.
;;   alloc(size: i32) -> ptr: i32          dealloc(ptr: i32, size: i32)
;;   live_allocations() -> i32             blocks allocated and not yet freed
;;
;; The allocator is a first-fit free list. A block is an 8-byte header, [size: i32][next: i32],
;; and an 8-aligned payload; `size` is the payload capacity (a multiple of 8), its low bit set
;; while the block is in use; `next` links free blocks. New blocks come from the top of the
;; heap, which grows memory as needed; alloc returns 0 when memory cannot grow (the sandbox's
;; memory cap). dealloc puts the block on the free list, and traps on a pointer that is not a
;; live block (a double free), rather than corrupt the list.
(module
  (memory (export "memory") 1)

  (global $heap_base i32 (i32.const 1024))
  (global $heap_top (mut i32) (i32.const 1024)) ;; first byte never handed out
  (global $free_list (mut i32) (i32.const 0)) ;; first free block, 0 for none
  (global $live (mut i32) (i32.const 0))

  (func (export "step") (param $x f64) (param $dt f64) (result f64)
    (f64.sub (local.get $x) (f64.mul (local.get $x) (local.get $dt))))

  (func (export "fall") (param $x f64) (param $v f64) (param $dt f64) (result f64 f64)
    (local $v2 f64)
    (local.set $v2 (f64.sub (local.get $v) (f64.mul (f64.const 9.81) (local.get $dt))))
    (f64.add (local.get $x) (f64.mul (local.get $v2) (local.get $dt)))
    (local.get $v2))

  (func (export "integrate") (param $ptr i32) (param $len i32) (result f64)
    (local $i i32) (local $addr i32) (local $prev f64) (local $cur f64) (local $acc f64)
    (if (i32.eqz (local.get $len)) (then (return (f64.const 0))))
    (local.set $prev (f64.load (local.get $ptr)))
    (f64.store (local.get $ptr) (f64.const 0))
    (local.set $i (i32.const 1))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $addr (i32.add (local.get $ptr) (i32.shl (local.get $i) (i32.const 3))))
        (local.set $cur (f64.load (local.get $addr)))
        (local.set $acc
          (f64.add (local.get $acc)
                   (f64.mul (f64.add (local.get $prev) (local.get $cur)) (f64.const 0.5))))
        (f64.store (local.get $addr) (local.get $acc))
        (local.set $prev (local.get $cur))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $acc))

  ;; --- allocator ---------------------------------------------------------------------------
  (func $alloc (export "alloc") (param $size i32) (result i32)
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

  (func $dealloc (export "dealloc") (param $ptr i32) (param $size i32)
    (local $block i32)
    (if (i32.eqz (local.get $ptr)) (then (return)))
    (local.set $block (i32.sub (local.get $ptr) (i32.const 8)))
    (if (i32.or
          (i32.or (i32.lt_u (local.get $block) (global.get $heap_base))
                  (i32.ge_u (local.get $ptr) (global.get $heap_top)))
          (i32.and (local.get $ptr) (i32.const 7)))
      (then unreachable)) ;; not a pointer alloc handed out
    (if (i32.eqz (i32.and (i32.load (local.get $block)) (i32.const 1)))
      (then unreachable)) ;; already free
    (i32.store (local.get $block) (i32.and (i32.load (local.get $block)) (i32.const -2)))
    (i32.store offset=4 (local.get $block) (global.get $free_list))
    (global.set $free_list (local.get $block))
    (global.set $live (i32.sub (global.get $live) (i32.const 1))))

  (func (export "live_allocations") (result i32)
    (global.get $live))
)
