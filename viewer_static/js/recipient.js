// The recipient's page: one section per step, rendered by the server in the page's language.
// This script shows the current step, talks to the recipient API and moves on without reloads.
// Every user-visible sentence comes from the page (#zb-texts or the sections), never from here.
import { frameUrls, openViewer } from "./viewer.js";

const root = document.getElementById("recipient");
const $ = (id) => document.getElementById(id);
const texts = new Map(
  [...document.querySelectorAll("#zb-texts [data-key]")].map((el) => [el.dataset.key, el.textContent.trim()]),
);
const locale = root.dataset.lang === "en" ? "en-GB" : "nl-NL";
const state = {
  csrf: root.dataset.csrf || "",
  institution: root.dataset.institution || "",
  dailyLimit: Number(root.dataset.dailyLimit) || 10,
  downloadsLeft: null,
  downloadScope: "all",
};

/** The page's text for `key`, with {placeholders} filled in. */
export function tr(key, values = {}) {
  const text = texts.get(key) ?? "";
  return text.replace(/\{(\w+)\}/g, (match, name) => (name in values ? String(values[name]) : match));
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

function csrfToken() {
  return state.csrf || cookie("zb_csrf") || cookie("__Host-zb_csrf");
}

/** Call the recipient API; answers {status, data}; status 0 when the network failed. */
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch {
    return { status: 0, data: {} };
  }
  let data = {};
  if (response.status !== 204) {
    try {
      data = await response.json();
    } catch {
      data = {};
    }
  }
  if (data && typeof data.csrf_token === "string") state.csrf = data.csrf_token;
  return { status: response.status, data };
}

function say(el, message) {
  el.textContent = message || "";
  el.hidden = !message;
}

function attemptsText(data) {
  const n = data && Number.isInteger(data.attempts_left) ? data.attempts_left : null;
  if (n === null) return "";
  return n === 1 ? tr("attempts_left_one") : tr("attempts_left", { n });
}

// Steps ------------------------------------------------------------------------------------

function showStep(step, { focus = true } = {}) {
  root.dataset.step = step;
  for (const section of root.querySelectorAll("section.step")) {
    section.hidden = section.dataset.step !== step;
  }
  $("logout").hidden = !["studies", "pending"].includes(step);
  say($("page-error"), "");
  const section = root.querySelector(`section.step[data-step="${step}"]`);
  const target = step === "sms" ? $("sms-code") : section && section.querySelector("h1");
  if (target && focus) {
    if (target.tagName === "H1") target.tabIndex = -1;
    target.focus({ preventScroll: true });
  }
  window.scrollTo(0, 0);
}

function go(step, options) {
  if (step === "studies") loadStudies(options);
  else showStep(step, options);
}

/** What every step does with the answers they share; true when it was handled. */
function handleCommon(status, data, errorEl) {
  if (status === 401) {
    window.location.replace("/");
  } else if (status === 410) {
    showEnded(data);
  } else if (status === 423) {
    showStep("locked");
  } else if (status === 429 && data && data.reason === "throttled") {
    say(errorEl, tr("throttled"));
  } else if (status === 0) {
    say(errorEl, tr("error_network"));
  } else {
    return false;
  }
  return true;
}

function showEnded(data) {
  const reason = data && ["expired", "revoked", "failed"].includes(data.reason) ? data.reason : "";
  say($("ended-reason"), reason ? tr(`ended_${reason}`) : "");
  const institution = (data && data.institution) || state.institution;
  const ask = $("ended-ask");
  ask.textContent = institution
    ? ask.dataset.template.replace("{institution}", institution)
    : ask.dataset.unknown;
  showStep("ended");
}

// Start: the code from the letter -------------------------------------------------------------

function normalizeCode(raw) {
  const plain = raw.toUpperCase().replace(/[\s-]/g, "");
  if (!/^[0-9A-Z]{12}$/.test(plain)) return null;
  return `${plain.slice(0, 4)}-${plain.slice(4, 8)}-${plain.slice(8)}`;
}

$("open-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = $("open-error");
  const input = $("open-code");
  const code = normalizeCode(input.value);
  input.setAttribute("aria-invalid", String(!code));
  if (!code) return say(error, tr("code_invalid"));
  say(error, "");
  const { status, data } = await api("POST", "/api/v1/recipient/open", { code });
  if (status === 200) {
    go(data.step || "terms");
  } else if (status === 422) {
    input.setAttribute("aria-invalid", "true");
    say(error, tr("code_invalid"));
  } else if (!handleCommon(status, data, error)) {
    say(error, tr("error_generic"));
  }
});

// Terms -----------------------------------------------------------------------------------------

$("terms-accept").addEventListener("change", (event) => {
  $("terms-continue").disabled = !event.target.checked;
});

$("terms-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!$("terms-accept").checked) return;
  const error = $("terms-error");
  const { status, data } = await api("POST", "/api/v1/recipient/terms", { accepted: true });
  if (status === 200) go(data.step || "birth_date");
  else if (!handleCommon(status, data, error)) say(error, tr("error_generic"));
});

// Birth date: typed dd-mm-jjjj, or picked in the native calendar ------------------------------------

const dobText = $("dob-text");
const dobPicker = $("dob-picker");
const dobError = $("dob-error");

function todayIso() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
}

/** Digits in day-month-year order, dashes put in; a lone digit before a separator gets its 0. */
function formatTypedDate(raw) {
  const groups = raw.split(/[^0-9]+/);
  const padded = groups.map((group, i) =>
    i < 2 && i < groups.length - 1 && group.length === 1 ? `0${group}` : group,
  );
  const digits = padded.join("").slice(0, 8);
  let out = digits.slice(0, 2);
  if (digits.length > 2) out += `-${digits.slice(2, 4)}`;
  if (digits.length > 4) out += `-${digits.slice(4)}`;
  const separatorTyped = /[^0-9]$/.test(raw);
  if (separatorTyped && (digits.length === 2 || digits.length === 4)) out += "-";
  return out;
}

/** The ISO date for a typed dd-mm-jjjj, or the key of what is wrong with it. */
function parseTypedDate(value) {
  const match = /^(\d{2})-(\d{2})-(\d{4})$/.exec(value.trim());
  if (!match) return { error: "date_format" };
  const [, dd, mm, yyyy] = match;
  const day = Number(dd);
  const month = Number(mm);
  const year = Number(yyyy);
  const date = new Date(Date.UTC(year, month - 1, day));
  const exists =
    month >= 1 && month <= 12 && date.getUTCDate() === day && date.getUTCMonth() === month - 1;
  if (!exists) return { error: "date_nonexistent" };
  const iso = `${yyyy}-${mm}-${dd}`;
  if (year < 1900 || iso > todayIso()) return { error: "date_range" };
  return { iso };
}

dobText.addEventListener("input", (event) => {
  const atEnd = dobText.selectionStart === dobText.value.length;
  const deleting = event.inputType && event.inputType.startsWith("delete");
  if (atEnd && !deleting) dobText.value = formatTypedDate(dobText.value);
  dobText.removeAttribute("aria-invalid");
  say(dobError, "");
});

dobText.addEventListener("change", () => {
  const parsed = parseTypedDate(dobText.value);
  if (parsed.iso) dobPicker.value = parsed.iso;
});

dobPicker.addEventListener("click", () => {
  // Desktop browsers open the calendar only from their small icon; open it from the whole button.
  try {
    dobPicker.showPicker();
  } catch {
    // Phones open their own picker on a tap; older browsers fall back to that.
  }
});

dobPicker.addEventListener("change", () => {
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(dobPicker.value);
  if (!match) return;
  dobText.value = `${match[3]}-${match[2]}-${match[1]}`;
  dobText.removeAttribute("aria-invalid");
  say(dobError, "");
});

$("dob-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const parsed = parseTypedDate(dobText.value);
  dobText.setAttribute("aria-invalid", String(!parsed.iso));
  if (!parsed.iso) {
    say(dobError, tr(parsed.error));
    dobText.focus();
    return;
  }
  say(dobError, "");
  const submit = event.submitter;
  if (submit) submit.disabled = true;
  const { status, data } = await api("POST", "/api/v1/recipient/birth-date", {
    birth_date: parsed.iso,
  });
  if (submit) submit.disabled = false;
  if (status === 200) {
    if (data.institution) state.institution = data.institution;
    const sent = $("sms-sent");
    sent.textContent = data.phone_hint
      ? sent.dataset.template.replace("{hint}", data.phone_hint)
      : sent.textContent || sent.dataset.generic;
    go(data.step || "sms");
  } else if (status === 400) {
    dobText.setAttribute("aria-invalid", "true");
    say(dobError, [tr("birth_date_wrong"), attemptsText(data)].filter(Boolean).join(" "));
  } else if (status === 409) {
    showStep("terms");
  } else if (status === 422) {
    say(dobError, tr("date_format"));
  } else if (status === 429 && data.reason !== "throttled") {
    say(dobError, tr("sms_limit"));
  } else if (status === 503) {
    say(dobError, tr("sms_failed"));
  } else if (!handleCommon(status, data, dobError)) {
    say(dobError, tr("error_generic"));
  }
});

dobPicker.max = todayIso();

// SMS code --------------------------------------------------------------------------------------

const smsCode = $("sms-code");
const smsError = $("sms-error");
const smsInfo = $("sms-info");

smsCode.addEventListener("input", () => {
  const digits = smsCode.value.replace(/\D/g, "").slice(0, 6);
  if (digits !== smsCode.value) smsCode.value = digits;
  smsCode.removeAttribute("aria-invalid");
  say(smsError, "");
});

$("sms-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const code = smsCode.value.trim();
  say(smsInfo, "");
  if (!/^\d{6}$/.test(code)) {
    smsCode.setAttribute("aria-invalid", "true");
    return say(smsError, tr("sms_code_format"));
  }
  const submit = event.submitter;
  if (submit) submit.disabled = true;
  const { status, data } = await api("POST", "/api/v1/recipient/sms-code", { code });
  if (submit) submit.disabled = false;
  if (status === 200) {
    go(data.step || "studies");
  } else if (status === 400) {
    smsCode.setAttribute("aria-invalid", "true");
    const next = data.attempts_left === 0 ? tr("sms_request_new") : attemptsText(data);
    say(smsError, [tr("sms_wrong"), next].filter(Boolean).join(" "));
    smsCode.select();
  } else if (status === 409) {
    showStep("birth_date");
  } else if (status === 422) {
    say(smsError, tr("sms_code_format"));
  } else if (!handleCommon(status, data, smsError)) {
    say(smsError, tr("error_generic"));
  }
});

$("sms-resend").addEventListener("click", async (event) => {
  const button = event.currentTarget;
  button.disabled = true;
  say(smsError, "");
  say(smsInfo, "");
  const { status, data } = await api("POST", "/api/v1/recipient/sms-code/resend");
  // A short pause keeps an impatient double tap from spending the day's SMS budget.
  window.setTimeout(() => {
    button.disabled = false;
  }, 10000);
  if (status === 200) {
    smsCode.value = "";
    say(smsInfo, tr("resent"));
    smsCode.focus();
  } else if (status === 429 && data.reason !== "throttled") {
    say(smsError, tr("sms_limit"));
  } else if (status === 503) {
    say(smsError, tr("sms_failed"));
  } else if (status === 409) {
    showStep("birth_date");
  } else if (!handleCommon(status, data, smsError)) {
    say(smsError, tr("error_generic"));
  }
});

// Studies ---------------------------------------------------------------------------------------

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "className") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of [].concat(children)) if (child) node.append(child);
  return node;
}

function formatStudyDate(value) {
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value || "");
  if (!match) return tr("no_date");
  const when = Date.UTC(Number(match[1]), Number(match[2]) - 1, Number(match[3]));
  return new Intl.DateTimeFormat(locale, { dateStyle: "long", timeZone: "UTC" }).format(when);
}

function formatExpiry(value) {
  if (!value) return "";
  const iso = /(Z|[+-]\d{2}:?\d{2})$/.test(value) ? value : `${value}Z`;
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return "";
  return new Intl.DateTimeFormat(locale, {
    dateStyle: "long",
    timeStyle: "short",
    timeZone: "Europe/Amsterdam",
  }).format(when);
}

function countText(n) {
  return n === 1 ? tr("images_count_one") : tr("images_count", { n });
}

async function loadStudies(options) {
  showStep("studies", options);
  const loading = $("studies-loading");
  loading.hidden = false;
  const { status, data } = await api("GET", "/api/v1/recipient/studies");
  loading.hidden = true;
  if (status === 200 && data.state === "pending") {
    showStep("pending", options);
  } else if (status === 200) {
    renderStudies(data);
  } else if (!handleCommon(status, data, $("page-error"))) {
    say($("page-error"), tr("error_generic"));
  }
}

function renderStudies(data) {
  if (data.institution) state.institution = data.institution;
  state.dailyLimit = Number(data.daily_limit) || state.dailyLimit;
  state.downloadsLeft = Number.isInteger(data.downloads_left) ? data.downloads_left : state.dailyLimit;
  $("studies-institution").textContent = state.institution
    ? tr("shared_by", { institution: state.institution })
    : "";
  const expiry = formatExpiry(data.expires_at);
  $("studies-expiry").textContent = expiry ? tr("available_until", { date: expiry }) : "";
  const list = $("study-list");
  list.replaceChildren(...(data.studies || []).map(renderStudy));
  updateDownloadsLeft();
}

// Reports and document-only series have their own buttons; they are not kinds of image.
const REPORT_MODALITIES = new Set(["SR", "DOC", "KO", "PR"]);

function renderStudy(study) {
  const title = study.description || tr("no_description");
  const date = formatStudyDate(study.study_date);
  const meta = el("p", { className: "study-meta muted" }, [
    el("time", { datetime: study.study_date || undefined, text: date }),
    ...(study.modalities || [])
      .filter((m) => !REPORT_MODALITIES.has(m))
      .map((m) => el("span", { className: "badge", text: m })),
  ]);
  const actions = el("div", { className: "study-actions" }, [
    ...renderReports(study),
    el("button", {
      type: "button",
      className: "download-study",
      text: tr("download_study"),
      dataset: { study: study.study_uid, label: `${title} · ${date}` },
    }),
  ]);
  const series = el(
    "ul",
    { className: "series-grid" },
    (study.series || []).map((s) => renderSeries(s, title)),
  );
  return el("article", { className: "card study", dataset: { study: study.study_uid } }, [
    el("div", { className: "study-head" }, [el("div", {}, [el("h2", { text: title }), meta]), actions]),
    series,
  ]);
}

function renderReports(study) {
  let reports = Array.isArray(study.reports) ? study.reports : [];
  if (!reports.length && study.report_url) reports = [{ kind: "pdf", url: study.report_url }];
  const seen = { sr: 0, pdf: 0 };
  return reports.map((report) => {
    const kind = report.kind === "sr" ? "sr" : "pdf";
    seen[kind] += 1;
    // Number reports only when a study has more than one of a kind.
    const many = reports.filter((r) => (r.kind === "sr" ? "sr" : "pdf") === kind).length > 1;
    const suffix = many ? ` ${seen[kind]}` : "";
    if (kind === "sr") {
      return el("button", {
        type: "button",
        className: "report-button",
        text: tr("report") + suffix,
        dataset: { reportUrl: report.url, title: tr("report") + suffix },
      });
    }
    return el("a", {
      className: "button report-link",
      href: report.url,
      target: "_blank",
      rel: "noopener",
      "aria-label": tr("report_pdf") + suffix,
      text: tr("report_pdf_short") + suffix,
    });
  });
}

function renderSeries(series, studyTitle) {
  const images = series.images || [];
  const count = frameUrls(images).length;
  const name = series.description || series.modality || tr("no_description");
  const thumb = images.length
    ? el("img", { src: images[0].thumbnail_url, alt: "", loading: "lazy", decoding: "async" })
    : el("span", { className: "series-empty", text: series.modality || "" });
  const button = el(
    "button",
    {
      type: "button",
      className: "series",
      "aria-label": `${tr("open_series", { name })} (${countText(count)})`,
    },
    [
      thumb,
      el("span", { className: "series-name", text: name }),
      el("span", { className: "series-count", text: countText(count) }),
    ],
  );
  button.disabled = count === 0;
  button.addEventListener("click", () =>
    openViewer({ title: `${studyTitle} · ${name}`, urls: frameUrls(images), tr, opener: button }),
  );
  return el("li", {}, [button]);
}

$("study-list").addEventListener("click", (event) => {
  const download = event.target.closest(".download-study");
  if (download) openDownload(download.dataset.study, download.dataset.label, download);
  const report = event.target.closest(".report-button");
  if (report) openReport(report.dataset.reportUrl, report.dataset.title, report);
});

$("download-all").addEventListener("click", (event) =>
  openDownload("all", tr("download_all_scope"), event.currentTarget),
);

$("pending-retry").addEventListener("click", () => loadStudies());

// Reports ---------------------------------------------------------------------------------------

async function openReport(url, title, opener) {
  const dialog = $("report-dialog");
  const text = $("report-text");
  $("report-title").textContent = title;
  text.textContent = tr("loading");
  dialog.showModal();
  dialog.addEventListener("close", () => opener.focus(), { once: true });
  try {
    const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) return window.location.replace("/");
    text.textContent = response.ok ? await response.text() : tr("report_failed");
  } catch {
    text.textContent = tr("report_failed");
  }
}

// Downloads -------------------------------------------------------------------------------------

function updateDownloadsLeft() {
  const left = Math.max(0, state.downloadsLeft ?? state.dailyLimit);
  const line = tr("downloads_left", { n: left, limit: state.dailyLimit });
  $("downloads-left").textContent = line;
  $("download-left").textContent = line;
  $("download-limit").hidden = left > 0;
  $("download-go").disabled = left <= 0;
}

function openDownload(scope, label, opener) {
  state.downloadScope = scope;
  $("download-scope").textContent = label;
  $("download-started").hidden = true;
  updateDownloadsLeft();
  const dialog = $("download-dialog");
  dialog.showModal();
  dialog.addEventListener("close", () => opener.focus(), { once: true });
}

$("download-go").addEventListener("click", () => {
  if ((state.downloadsLeft ?? state.dailyLimit) <= 0) return updateDownloadsLeft();
  const format = $("download-form").elements.format.value || "dicom";
  const query = new URLSearchParams({ format, study: state.downloadScope });
  // A navigation, not a fetch: the ZIP streams straight to disk, and should the limit be hit
  // after all, the server's own friendly page is shown.
  window.location.assign(`/api/v1/recipient/download?${query}`);
  state.downloadsLeft = Math.max(0, (state.downloadsLeft ?? state.dailyLimit) - 1);
  updateDownloadsLeft();
  $("download-started").hidden = false;
});

// Signing out -----------------------------------------------------------------------------------

$("logout").addEventListener("click", async () => {
  const { status } = await api("POST", "/api/v1/recipient/logout");
  if (status === 0) return say($("page-error"), tr("error_network"));
  $("study-list").replaceChildren();
  state.csrf = "";
  showStep("signed_out");
});

// On arrival the page keeps the browser's own focus; later steps move it to their heading.
go(root.dataset.step || "start", { focus: false });
