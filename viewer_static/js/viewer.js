// Full-screen image viewer: one series, its images and their frames as one sequence.
// Paging: swipe, arrow keys, mouse wheel, buttons. Zoom: pinch, Ctrl + wheel, double-click or
// double-tap, + and - keys; drag to pan when zoomed. The markup is the page's #viewer dialog.

const MAX_SCALE = 8;
const SWIPE_PX = 40;
const TAP_SLOP_PX = 10;
const DOUBLE_TAP_MS = 320;
const WHEEL_STEP = 50;
const PRELOAD = 2;

/** The preview URL of every picture in a series: frame k of a multi-frame image as ?frame=k. */
export function frameUrls(images) {
  const urls = [];
  for (const image of images || []) {
    const frames = Math.max(1, Number(image.frames) || 1);
    if (frames === 1) {
      urls.push(image.preview_url);
      continue;
    }
    const joiner = image.preview_url.includes("?") ? "&" : "?";
    for (let k = 0; k < frames; k += 1) urls.push(`${image.preview_url}${joiner}frame=${k}`);
  }
  return urls;
}

class Viewer {
  constructor(dialog) {
    this.dialog = dialog;
    this.stage = dialog.querySelector("#viewer-stage");
    this.image = dialog.querySelector("#viewer-image");
    this.counter = dialog.querySelector("#viewer-counter");
    this.title = dialog.querySelector("#viewer-title");
    this.status = dialog.querySelector("#viewer-status");
    this.prev = dialog.querySelector("#viewer-prev");
    this.next = dialog.querySelector("#viewer-next");
    this.urls = [];
    this.index = 0;
    this.scale = 1;
    this.tx = 0;
    this.ty = 0;
    this.pointers = new Map();
    this.gesture = null;
    this.lastTap = null;
    this.lastPointerType = "mouse";
    this.wheel = 0;
    this.cache = new Map();
    this.bind();
  }

  bind() {
    const on = (target, type, handler, options) => target.addEventListener(type, handler, options);
    on(this.dialog.querySelector("#viewer-close"), "click", () => this.dialog.close());
    on(this.prev, "click", () => this.step(-1));
    on(this.next, "click", () => this.step(1));
    on(this.dialog.querySelector("#viewer-zoom-in"), "click", () => this.zoomCentre(1.5));
    on(this.dialog.querySelector("#viewer-zoom-out"), "click", () => this.zoomCentre(1 / 1.5));
    on(this.dialog.querySelector("#viewer-zoom-reset"), "click", () => this.resetZoom());
    on(this.dialog, "keydown", (event) => this.onKey(event));
    on(this.dialog, "close", () => this.onClose());
    on(this.stage, "pointerdown", (event) => this.onPointerDown(event));
    on(this.stage, "pointermove", (event) => this.onPointerMove(event));
    on(this.stage, "pointerup", (event) => this.onPointerUp(event, false));
    on(this.stage, "pointercancel", (event) => this.onPointerUp(event, true));
    on(this.stage, "wheel", (event) => this.onWheel(event), { passive: false });
    on(this.stage, "dblclick", (event) => this.onDoubleClick(event));
    on(this.image, "load", () => this.setStatus(""));
    on(this.image, "error", () => this.setStatus(this.tr("image_failed")));
    on(window, "popstate", () => {
      if (this.dialog.open) this.dialog.close();
    });
    on(window, "resize", () => this.clampPan(true));
  }

  open({ title, urls, index = 0, tr, opener }) {
    this.tr = tr;
    this.urls = urls;
    this.opener = opener;
    this.title.textContent = title;
    document.documentElement.classList.add("viewer-open");
    this.dialog.showModal();
    // The phone's back button closes the viewer instead of leaving the page.
    window.history.pushState({ zbViewer: true }, "", window.location.href);
    this.show(index);
    this.stage.focus({ preventScroll: true });
  }

  onClose() {
    document.documentElement.classList.remove("viewer-open");
    this.image.removeAttribute("src");
    this.cache.clear();
    this.pointers.clear();
    this.gesture = null;
    if (window.history.state && window.history.state.zbViewer) window.history.back();
    if (this.opener) this.opener.focus();
  }

  // Paging ---------------------------------------------------------------------------------------

  show(index) {
    const total = this.urls.length;
    this.index = Math.min(Math.max(index, 0), total - 1);
    this.resetZoom();
    const counter = this.tr("image_counter", { n: this.index + 1, total });
    this.counter.textContent = counter;
    this.image.alt = `${this.title.textContent} · ${counter}`;
    this.prev.disabled = this.index === 0;
    this.next.disabled = this.index === total - 1;
    this.dialog.dataset.index = String(this.index);
    const url = this.urls[this.index];
    if (this.image.getAttribute("src") !== url) {
      const cached = this.cache.get(url);
      if (!(cached && cached.complete && cached.naturalWidth)) this.setStatus(this.tr("loading"));
      this.image.src = url;
    }
    this.preload();
  }

  step(delta) {
    const target = this.index + delta;
    if (target < 0 || target >= this.urls.length) return this.settle();
    this.show(target);
  }

  preload() {
    const wanted = new Set();
    for (let d = -PRELOAD; d <= PRELOAD; d += 1) {
      const url = this.urls[this.index + d];
      if (url && d !== 0) wanted.add(url);
    }
    for (const url of this.cache.keys()) if (!wanted.has(url)) this.cache.delete(url);
    for (const url of wanted) {
      if (this.cache.has(url)) continue;
      const picture = new Image();
      picture.decoding = "async";
      picture.src = url;
      this.cache.set(url, picture);
    }
  }

  setStatus(message) {
    this.status.textContent = message;
    this.status.hidden = !message;
  }

  // Zoom and pan ---------------------------------------------------------------------------------

  apply(offsetX = 0) {
    this.image.style.transform = `translate(${this.tx + offsetX}px, ${this.ty}px) scale(${this.scale})`;
    this.dialog.dataset.zoomed = String(this.scale > 1.01);
  }

  clampPan(render = false) {
    if (this.scale <= 1) {
      this.scale = 1;
      this.tx = 0;
      this.ty = 0;
    } else {
      const { width, height } = this.stage.getBoundingClientRect();
      this.tx = Math.min(0, Math.max(width - width * this.scale, this.tx));
      this.ty = Math.min(0, Math.max(height - height * this.scale, this.ty));
    }
    if (render) this.apply();
  }

  zoomAt(scale, x, y) {
    const next = Math.min(MAX_SCALE, Math.max(1, scale));
    this.tx = x - (x - this.tx) * (next / this.scale);
    this.ty = y - (y - this.ty) * (next / this.scale);
    this.scale = next;
    this.clampPan(true);
  }

  zoomCentre(factor) {
    const { width, height } = this.stage.getBoundingClientRect();
    this.zoomAt(this.scale * factor, width / 2, height / 2);
  }

  toggleZoom(x, y) {
    if (this.scale > 1.01) this.resetZoom();
    else this.zoomAt(2.5, x, y);
  }

  resetZoom() {
    this.scale = 1;
    this.tx = 0;
    this.ty = 0;
    this.image.classList.remove("settling");
    this.apply();
  }

  /** Glide back after a swipe that did not page. */
  settle() {
    this.image.classList.add("settling");
    this.apply();
    window.setTimeout(() => this.image.classList.remove("settling"), 200);
  }

  local(event) {
    const box = this.stage.getBoundingClientRect();
    return { x: event.clientX - box.left, y: event.clientY - box.top };
  }

  // Pointers: one finger swipes (or pans when zoomed), two fingers pinch ----------------------------

  onPointerDown(event) {
    if (event.pointerType === "mouse" && event.button !== 0) return;
    this.lastPointerType = event.pointerType;
    this.stage.setPointerCapture(event.pointerId);
    this.pointers.set(event.pointerId, this.local(event));
    this.startGesture();
  }

  startGesture() {
    const points = [...this.pointers.values()];
    if (points.length >= 2) {
      const [a, b] = points;
      this.gesture = {
        kind: "pinch",
        distance: Math.hypot(a.x - b.x, a.y - b.y) || 1,
        mid: { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 },
        scale: this.scale,
        tx: this.tx,
        ty: this.ty,
      };
    } else if (points.length === 1) {
      const zoomed = this.scale > 1.01;
      const swipe = !zoomed && this.lastPointerType !== "mouse";
      this.gesture = {
        kind: swipe ? "swipe" : "pan",
        start: points[0],
        tx: this.tx,
        ty: this.ty,
        time: performance.now(),
        moved: false,
      };
    } else {
      this.gesture = null;
    }
  }

  onPointerMove(event) {
    if (!this.pointers.has(event.pointerId) || !this.gesture) return;
    const point = this.local(event);
    this.pointers.set(event.pointerId, point);
    const g = this.gesture;
    if (g.kind === "pinch") {
      const [a, b] = [...this.pointers.values()];
      const mid = { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
      const scale = Math.min(MAX_SCALE, Math.max(1, g.scale * (Math.hypot(a.x - b.x, a.y - b.y) / g.distance)));
      this.tx = mid.x - (g.mid.x - g.tx) * (scale / g.scale);
      this.ty = mid.y - (g.mid.y - g.ty) * (scale / g.scale);
      this.scale = scale;
      this.clampPan(true);
      return;
    }
    const dx = point.x - g.start.x;
    const dy = point.y - g.start.y;
    if (Math.hypot(dx, dy) > TAP_SLOP_PX) g.moved = true;
    if (g.kind === "pan") {
      this.tx = g.tx + dx;
      this.ty = g.ty + dy;
      this.clampPan(true);
    } else if (Math.abs(dx) > Math.abs(dy)) {
      this.apply(dx * 0.6);
    }
  }

  onPointerUp(event, cancelled) {
    if (!this.pointers.has(event.pointerId)) return;
    const point = this.local(event);
    this.pointers.delete(event.pointerId);
    const g = this.gesture;
    if (g && g.kind === "pinch") {
      // The finger left on the glass carries on as a pan, without a jump.
      this.startGesture();
      if (this.gesture && this.gesture.kind === "swipe") this.gesture.kind = "pan";
      return;
    }
    this.gesture = null;
    if (!g || cancelled) return this.settle();
    const dx = point.x - g.start.x;
    const dy = point.y - g.start.y;
    if (g.kind === "swipe" && Math.abs(dx) > SWIPE_PX && Math.abs(dx) > 1.5 * Math.abs(dy)) {
      this.step(dx < 0 ? 1 : -1);
    } else if (g.kind === "swipe") {
      this.settle();
    }
    if (!g.moved && event.pointerType !== "mouse") this.onTap(point);
  }

  onTap(point) {
    const now = performance.now();
    const last = this.lastTap;
    if (last && now - last.time < DOUBLE_TAP_MS && Math.hypot(point.x - last.x, point.y - last.y) < 40) {
      this.lastTap = null;
      this.toggleZoom(point.x, point.y);
    } else {
      this.lastTap = { time: now, x: point.x, y: point.y };
    }
  }

  onDoubleClick(event) {
    // Touch double-taps are handled by onTap; browsers may add a dblclick of their own.
    if (this.lastPointerType !== "mouse") return;
    const { x, y } = this.local(event);
    this.toggleZoom(x, y);
  }

  onWheel(event) {
    event.preventDefault();
    const unit = event.deltaMode === 1 ? 40 : event.deltaMode === 2 ? 400 : 1;
    const delta = event.deltaY * unit;
    if (event.ctrlKey || event.metaKey) {
      // Ctrl + wheel, and the trackpad pinch that browsers report the same way.
      const { x, y } = this.local(event);
      this.zoomAt(this.scale * Math.exp(-delta * 0.01), x, y);
      return;
    }
    this.wheel += delta;
    if (Math.abs(this.wheel) >= WHEEL_STEP) {
      this.step(this.wheel > 0 ? 1 : -1);
      this.wheel = 0;
    }
  }

  onKey(event) {
    const keys = {
      ArrowRight: () => this.step(1),
      ArrowDown: () => this.step(1),
      PageDown: () => this.step(1),
      ArrowLeft: () => this.step(-1),
      ArrowUp: () => this.step(-1),
      PageUp: () => this.step(-1),
      Home: () => this.show(0),
      End: () => this.show(this.urls.length - 1),
      "+": () => this.zoomCentre(1.5),
      "=": () => this.zoomCentre(1.5),
      "-": () => this.zoomCentre(1 / 1.5),
      0: () => this.resetZoom(),
    };
    const action = keys[event.key];
    if (!action || event.altKey || event.ctrlKey || event.metaKey) return;
    event.preventDefault();
    action();
  }
}

let viewer = null;

/** Open the viewer on `urls` at `index`; `tr` gives the page's texts; focus returns to `opener`. */
export function openViewer(options) {
  viewer = viewer || new Viewer(document.getElementById("viewer"));
  viewer.open(options);
}
