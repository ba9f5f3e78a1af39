// The demo page: send the four measurements to POST /v1/classify and show the answer, or the API's error.
"use strict";

const FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"];

const form = document.getElementById("classify-form");
const button = form.querySelector("button");
const result = document.getElementById("result");
const answer = document.getElementById("answer");
const errorBox = document.getElementById("error");

function measurements() {
  const body = {};
  for (const name of FEATURES) {
    // NaN for an empty or non-numeric field: JSON sends it as null, and the API's 400 names the field.
    body[name] = form.elements[name].valueAsNumber;
  }
  return body;
}

function percent(probability) {
  return `${(probability * 100).toFixed(1)}%`;
}

function bar(label, probability) {
  const item = document.createElement("li");
  const name = document.createElement("span");
  name.className = "bar-name";
  name.textContent = label;
  const track = document.createElement("span");
  track.className = "bar-track";
  track.setAttribute("aria-hidden", "true");  // the number beside it says the same
  const fill = document.createElement("span");
  fill.className = "bar-fill";
  fill.style.width = `${probability * 100}%`;
  track.append(fill);
  const value = document.createElement("span");
  value.className = "bar-value";
  value.textContent = percent(probability);
  item.append(name, track, value);
  return item;
}

function showAnswer(data) {
  document.getElementById("pred-label").textContent = data.pred_label;
  const rows = Object.entries(data.probabilities).map(([label, p]) => bar(label, p));
  document.getElementById("bars").replaceChildren(...rows);
  document.getElementById("model").textContent = `Model ${data.model_name}, version ${data.model_version}`;
  errorBox.hidden = true;
  answer.hidden = false;
}

function showError(message) {
  errorBox.textContent = message;
  answer.hidden = true;
  errorBox.hidden = false;
}

async function classify(event) {
  event.preventDefault();
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  const key = form.elements.api_key.value.trim();
  if (key) {
    headers["X-API-Key"] = key;
  }
  button.disabled = true;
  result.setAttribute("aria-busy", "true");
  try {
    const response = await fetch(form.dataset.endpoint, {
      method: "POST", headers, body: JSON.stringify(measurements()),
    });
    // Every answer of the API is an envelope; a proxy in front may answer something else.
    const envelope = await response.json().catch(() => null);
    if (response.ok && envelope && envelope.data) {
      showAnswer(envelope.data);
    } else if (envelope && envelope.error) {
      showError(`${response.status} ${envelope.error.raised}: ${envelope.error.message}`);
    } else {
      showError(`${response.status} ${response.statusText || "error"}: the answer is not the API's envelope`);
    }
  } catch (err) {
    showError(`Could not reach the API: ${err.message}`);
  } finally {
    button.disabled = false;
    result.setAttribute("aria-busy", "false");
  }
}

form.addEventListener("submit", classify);
